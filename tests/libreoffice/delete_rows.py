"""Delete rows of a protected template the way a person does in LibreOffice Calc, then
save it as .xlsx — run by tests/test_partial_templates.py with the system Python (the
one that has LibreOffice's ``uno`` module), not the project's.

Usage: python3 delete_rows.py IN.xlsx OUT.xlsx ROW [ROW …]   (1-based sheet rows)

It starts a headless ``soffice`` on a private profile, opens the file, selects each
whole row (bottom first) and sends Calc's own "Delete Rows" command — the menu item,
which honours sheet protection, not the API call that would bypass it — and prints a
JSON line: whether the sheet was still protected and the rows left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import uno
from com.sun.star.beans import PropertyValue
from com.sun.star.lang import DisposedException


def prop(name: str, value: object) -> PropertyValue:
    p = PropertyValue()
    p.Name, p.Value = name, value
    return p


def connect(pipe: str, proc: subprocess.Popen[bytes]) -> object:
    local = uno.getComponentContext()
    resolver = local.ServiceManager.createInstanceWithContext(
        "com.sun.star.bridge.UnoUrlResolver", local
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            return resolver.resolve(f"uno:pipe,name={pipe};urp;StarOffice.ComponentContext")
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # soffice is still starting: poll until it answers


def delete_rows(source: str, target: str, rows: list[int]) -> dict[str, object]:
    profile = tempfile.mkdtemp(prefix="batchd-lo-")
    pipe = f"batchd{os.getpid()}"
    soffice = [
        "soffice",
        "--headless",
        "--invisible",
        "--norestore",
        "--nologo",
        f"-env:UserInstallation=file://{profile}",
    ]
    # A new profile makes soffice restart itself once after creating it, which would
    # drop a connection made meanwhile: create the profile first, then listen.
    subprocess.run([*soffice, "--terminate_after_init"], capture_output=True, timeout=120)
    proc = subprocess.Popen(
        [*soffice, f"--accept=pipe,name={pipe};urp;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ctx = connect(pipe, proc)
        smgr = ctx.ServiceManager  # type: ignore[attr-defined]
        desktop = smgr.createInstanceWithContext("com.sun.star.frame.Desktop", ctx)
        dispatcher = smgr.createInstanceWithContext("com.sun.star.frame.DispatchHelper", ctx)
        # A copy per attempt: a crashed attempt leaves a lock file beside what it opened.
        opened = shutil.copy(source, os.path.join(profile, "opened.xlsx"))
        doc = desktop.loadComponentFromURL(
            uno.systemPathToFileUrl(opened), "_blank", 0, (prop("Hidden", True),)
        )
        sheet = doc.Sheets.getByIndex(0)
        frame = doc.CurrentController.Frame
        for row in sorted(rows, reverse=True):
            whole_row = sheet.getCellRangeByName(f"A{row}:AMJ{row}")
            doc.CurrentController.select(whole_row)
            dispatcher.executeDispatch(frame, ".uno:DeleteRows", "", 0, ())
        used = sheet.createCursor()
        used.gotoEndOfUsedArea(False)
        found = {"protected": bool(sheet.isProtected()), "last_row": used.RangeAddress.EndRow + 1}
        doc.storeToURL(
            uno.systemPathToFileUrl(os.path.abspath(target)),
            (prop("FilterName", "Calc MS Excel 2007 XML"),),
        )
        return found
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    source, target, *rows = sys.argv[1:]
    for attempt in range(3):
        try:
            found = delete_rows(source, target, [int(r) for r in rows])
        except DisposedException:
            # soffice headless now and then dies while saving (seen about once in ten
            # runs of LibreOffice 7.4): the work is repeated from the start.
            if attempt == 2:
                raise
        else:
            print(json.dumps(found))
            return


if __name__ == "__main__":
    main()
