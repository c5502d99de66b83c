"""What a reviewer works with: the App (`app`), the report (`report`, `render`), the relabel list (`export`,
`labelstudio`) and the corrections read back (`relabel`)."""
