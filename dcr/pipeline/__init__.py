"""The pipeline: profiles, the arms (alignment only, DCR then alignment) and the comparison report."""
