"""Results: evaluation and its figures, the HTML and Markdown report, comparisons chosen on validation,
speed benchmarks, and the records every published figure comes from."""
