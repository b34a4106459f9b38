"""The outside half: a client of a ComfyUI server. workflow.py reads API-format workflows (and refuses the
editor's UI format with how to export the API one); preflight.py finds what would make a workflow fail on a
server before any run."""
