"""prepare_isic's audit as people read it: images per class and split, then every row and
file left out and why."""


def count_table(rows: list[dict], class_names: list[str]) -> dict:
    """Images per class and split (test only where groups were held out), and val's share."""
    splits = ("train", "val", "test") if any(r["split"] == "test" for r in rows) else (
        "train", "val")
    counts = {}
    for name in sorted(class_names):
        counts[name] = {split: sum(1 for r in rows if r["class"] == name and r["split"] == split)
                        for split in splits}
    counts["total"] = {split: sum(c[split] for c in counts.values()) for split in splits}
    for count in counts.values():
        count["val share"] = round(count["val"] / max(count["train"] + count["val"], 1), 4)
    return counts


def describe_audit(audit: dict) -> str:
    """The printed report: counts per class and split, then every problem found."""
    width = max(len(name) for name in audit["counts"])
    test = "test" in audit["counts"]["total"]
    lines = [f"{'class':<{width}}  {'train':>7}  {'val':>7}  {'val share':>9}"
             + (f"  {'test':>7}" if test else "")]
    for name, count in audit["counts"].items():
        lines.append(f"{name:<{width}}  {count['train']:>7}  {count['val']:>7}  "
                     f"{count['val share']:>9.3f}" + (f"  {count['test']:>7}" if test else ""))
    if test:
        lines.append(f"test: the held-out group(s) {', '.join(audit['split']['held out'])} "
                     "and every image of their lesions")
    if audit.get("groups"):
        described = audit["groups"]
        lines.append(f"groups: {', '.join(described['columns'])} from {described['file']} "
                     f"({described['images without a row']} images without a row)")
        for column, count in described.get("no value", {}).items():
            if count:
                lines.append(f"groups: {count} images have no {column} value (a blank cell "
                             "or no row): no group of their own")
        for column, merged in described.get("spellings merged", {}).items():
            lines.append(f"groups: {column} values differing only in case or space are one "
                         "group: " + "; ".join(f"{', '.join(map(repr, others))} as {kept!r}"
                                               for kept, others in merged.items()))
    for key in ("missing on disk", "not in csv", "no label", "several labels", "unk",
                "no value for --holdout_group"):
        if audit.get(key):
            shown = ", ".join(audit[key][:10]) + (" ..." if len(audit[key]) > 10 else "")
            lines.append(f"left out, {key}: {len(audit[key])} ({shown})")
    if audit.get("metadata missing"):
        lines.append("metadata.csv, missing values: " + ", ".join(
            f"{column} {count}" for column, count in audit["metadata missing"].items()))
    for item in audit["malformed rows"]:
        lines.append(f"left out, malformed row: {item['file']} line {item['line']}: "
                     f"{item['reason']}")
    for item in audit["unreadable"]:
        lines.append(f"left out, unreadable: {item['image']}: {item['reason']}")
    for group in audit["duplicates"]:
        lines.append(f"byte-identical, kept on one side: {', '.join(group)}")
    if audit["images without lesion id"]:
        lines.append(f"images without a lesion id (each its own group): "
                     f"{audit['images without lesion id']}")
    size = audit["image size"]
    lines.append(f"image size from {size['min'][0]}x{size['min'][1]} to "
                 f"{size['max'][0]}x{size['max'][1]} (width x height minima and maxima)")
    lines.append("files: " + ", ".join(f"{mode} {count}" for mode, count in audit["files"].items()))
    return "\n".join(lines)
