"""The store stage: schema and migrations, the writer, marks, re-judging, faults of the disk and of input."""
