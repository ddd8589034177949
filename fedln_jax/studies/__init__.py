"""Many runs, then a table: figures, sweeps, the demo, analyses, the results pages and the
paper's numbers beside ours (docs/architecture.md#layers)."""
