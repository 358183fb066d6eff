"""Execute a notebook in place, so that it is stored with its outputs (``make tutorial``).

python docs/tutorials/execute.py docs/tutorials/her2st.ipynb
"""

import sys
import time
from pathlib import Path

import nbclient
import nbformat


def main(path: str) -> None:
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = nbclient.NotebookClient(
        notebook,
        timeout=3600,
        kernel_name="python3",
        resources={"metadata": {"path": str(Path(path).parent)}},
    )
    client.execute()
    notebook.metadata["sthist_execution_seconds"] = round(time.perf_counter() - start)
    nbformat.write(notebook, path)
    print(f"executed {path} in {notebook.metadata['sthist_execution_seconds']} s")


if __name__ == "__main__":
    main(sys.argv[1])
