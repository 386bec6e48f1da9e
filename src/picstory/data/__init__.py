"""The data stages: sources → decode → audit → split → cache → batches."""
