"""How the workflow reaches the roles: in-process (`in_process`, `embedded` for local
runs), over HTTP (`http_client`), and the replica's HTTP server (`server`)."""
