"""From stored signals to verdicts: `policy` judges one sample, `triage` scores a dataset and ranks it."""
