"""What judges the labels: which head (`choice`), a head fitted on the embeddings (`fitted`), and the
neighbours' vote (`neighbours`)."""
