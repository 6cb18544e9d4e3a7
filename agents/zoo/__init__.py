"""The offline expert zoo: real small LLMs converted from registry packages, and
specialists trained by the project's own code, built into a user cache directory."""
