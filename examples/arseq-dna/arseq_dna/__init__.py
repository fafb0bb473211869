"""arseq-dna: DNA/RNA sequences as an arseq modality (a worked example of an arseq plugin)."""
