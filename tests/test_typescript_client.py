"""The OpenAPI document is fit for TypeScript too: openapi-typescript (pinned in
``tests/node_tools/package.json``, default options) turns the live document into
``schema.d.ts``, and a small client written against those types — a minimal create
request that leaves every defaulted option out, a typed batch read, the SSE stream as
text — passes ``tsc --noEmit --strict``. A new user hit both failures this guards:
defaulted request fields typed as required, and the stream typed ``unknown``."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.test_openapi_lint import (  # noqa: F401 (fixtures)
    document_file,
    node_tools,
    run_node_tool,
)
from tests.tooling import missing_tool

CLIENT_TS = """\
import type { components, operations, paths } from "./schema";

type BatchCreate = paths["/api/v1/batches"]["post"]["requestBody"]["content"]["application/json"];
type Batch = components["schemas"]["BatchOut"];
type Created = operations["create_batch"]["responses"][202]["content"]["application/json"];
type Events = operations["get_batch_events"]["responses"][200]["content"]["text/event-stream"];

// priority, start_suspended and dry_run have server defaults: a request may leave them out.
export const minimal: BatchCreate = { type: "task.approve", ids: [1] };
export const options: components["schemas"]["BatchCreate"] = {
  type: "task.approve",
  filter: { definition_key: "expense" },
  priority: "high",
  start_suspended: true,
  dry_run: false,
};
// @ts-expect-error: `type` is required
export const untyped: BatchCreate = { ids: [1] };
// @ts-expect-error: an unknown option is refused, as the server refuses it
export const misspelt: BatchCreate = { type: "task.approve", ids: [1], priorty: "high" };

export function describe(batch: Batch): string {
  const id: number = batch.id;
  const status: components["schemas"]["BatchStatus"] = batch.status;
  const counts: number[] = [batch.total, batch.failed, batch.ignored, batch.pending];
  const percent: number = Math.round(batch.progress * 100);
  return `#${id} ${status} ${percent}% ${counts.join("/")}`;
}

export function created(body: Created): string {
  return "dry_run" in body ? "dry run" : describe(body);
}

export function firstLine(stream: Events): string {
  return stream.split("\\n")[0];
}
"""


async def test_openapi_typescript_types_compile_strict(
    node_tools: Path,  # noqa: F811
    document_file: Path,  # noqa: F811
) -> None:
    if shutil.which("node") is None:
        missing_tool("node is not installed (it runs openapi-typescript and tsc)")
    workdir = document_file.parent
    await run_node_tool(
        node_tools / "openapi-typescript",
        document_file,
        "-o",
        "schema.d.ts",
        cwd=workdir,
        must_succeed=True,
    )
    schema = (workdir / "schema.d.ts").read_text()
    assert '"text/event-stream": string;' in schema
    (workdir / "client.ts").write_text(CLIENT_TS)
    await run_node_tool(
        node_tools / "tsc", "--noEmit", "--strict", "client.ts", cwd=workdir, must_succeed=True
    )
