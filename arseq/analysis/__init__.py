"""Measurements on trained models: `arseq score` (likelihood of given files) and `arseq analyze drift`
(do autoregressive errors compound?)."""
