"""The knowledge base: parsing, chunking, offline embeddings, LanceDB storage and hybrid search."""
