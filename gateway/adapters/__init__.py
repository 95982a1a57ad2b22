"""Image-aware embeddings for LangChain and llama-index, speaking to the gateway through the openai SDK.

`gateway.adapters.langchain.GatewayEmbeddings` and `gateway.adapters.llama_index.GatewayMultiModalEmbedding`
are optional extras (`pip install 'embeddings-gateway[langchain]'` / `[llama-index]`). Importing this package
loads neither torch nor the server: the adapters run in client processes.
"""
