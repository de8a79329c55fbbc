"""The corpus: the default Rotten Tomatoes snippets (`rotten_tomatoes`), the user's files (`text_files`), and one
loader that splits either by movie and fingerprints it (`corpus`)."""
