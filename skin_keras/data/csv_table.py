"""Reading the CSV files users bring (ISIC ground truth and metadata, patient metadata): rows
kept with the file and line of every malformed one, one-line errors for files that cannot be
read. And writing text cells a spreadsheet will not run."""

import csv
from pathlib import Path

from skin_keras.core.errors import UserError

# A cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(text: str) -> str:
    """`text` as a CSV cell a spreadsheet shows as text: a leading ' where it would start a
    formula (a file named =HYPERLINK(...).jpg), as OWASP advises."""
    text = str(text)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def read_csv(path: str | Path, required: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    """(rows with every required column, malformed rows as {"file", "line", "reason"}).

    A row with fewer or more fields than the header (a value with an unquoted comma would
    shift the columns after it) or an empty image name is malformed and left out; a file
    that is not UTF-8 text or lacks a required column is a UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"CSV file {path} does not exist")
    rows, malformed = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            missing = [column for column in required if column not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path} lacks column(s) {', '.join(missing)} "
                                f"(found: {', '.join(reader.fieldnames or []) or 'nothing'})")
            for row in reader:
                short = [column for column in required if row.get(column) is None]
                if None in row:  # DictReader keeps the extra fields of a long row there.
                    reason = (f"too many fields ({len(reader.fieldnames) + len(row[None])} for "
                              f"{len(reader.fieldnames)} columns: an unquoted comma?)")
                elif short or None in row.values():
                    reason = f"too few fields (no {', '.join(short) or _last_absent(row)})"
                elif "image" in required and not row["image"].strip():
                    reason = "no image name"
                else:
                    rows.append(row)
                    continue
                malformed.append({"file": path.name, "line": reader.line_num, "reason": reason})
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at "
                        f"offset {error.start}): save it as UTF-8") from None
    except csv.Error as error:
        raise UserError(f"{path} is not a readable CSV file: {error}") from None
    return rows, malformed


def _last_absent(row: dict) -> str:
    return ", ".join(column for column, value in row.items() if value is None)
