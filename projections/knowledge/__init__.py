"""The knowledge base: parsing, chunking, offline embeddings, LanceDB storage and hybrid search.

Readers (the edge, the tools actor, the CLI) go through `search`; the indexer actor and
`vagent docs reindex` write chunks through `index`. Nothing here is imported by this
package itself: LanceDB and the embedding model load only where they are used."""
