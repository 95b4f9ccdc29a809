"""docs/quickstart.ipynb runs as a user runs it (nbclient, a fresh Python kernel): it trains
on the synthetic demo set from the installed ImageNet Lite0 weights, loads the run, predicts
and draws a Grad-CAM figure."""

import re
from pathlib import Path

import nbclient
import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "quickstart.ipynb"


def test_the_quickstart_notebook_runs_and_shows_its_answers(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    texts = "".join(output.get("text", "") for cell in notebook.cells
                    if cell.cell_type == "code" for output in cell.outputs)
    assert (tmp_path / "quickstart" / "runs" / "exp1" / "weights" / "best.keras").is_file()
    assert "Classifier(" in texts and "8 classes, 96 px" in texts
    answers = re.findall(r"^(\w[\w ]+?) +-> (\w[\w ]+?) +(\d\.\d\d)$", texts, re.MULTILINE)
    assert len(answers) == 8  # A validation image of each class, a row each.
    assert sum(truth == label for truth, label, _ in answers) >= 4  # Learned, not constant.
    figures = [output for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs if "image/png" in output.get("data", {})]
    assert len(figures) == 1  # The Grad-CAM figure, drawn inline.
    assert re.search(r"^\(72, 96\) [0-9.]+ 1\.0$", texts, re.MULTILINE)  # Image-sized, [0, 1].
