"""The flows: the command line, the steps as functions, the papermill runs and the book, the GPU study and one
question's letters."""
