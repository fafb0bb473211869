"""`arseq serve`: an HTTP server with continuous batching over arseq's slot engine (arseq.decode), and a web
page to hear, see and download samples. Needs the `serve` extra: `pip install 'arseq[serve]'`."""
