// A front-end's view of the items API, typed by types generated from docs/openapi.json
// (`npx openapi-typescript ../../docs/openapi.json -o api.d.ts`). If the document and
// this code disagree (a renamed field, a removed route), `tsc --strict` fails.
import type { components, operations, paths } from "./api";

type Item = components["schemas"]["ItemRead"];
type ItemCreate = components["schemas"]["ItemCreate"];
type ItemPage = components["schemas"]["Page_ItemRead_"];
type ApiError = components["schemas"]["ErrorResponse"];
type ListQuery = NonNullable<operations["listItems"]["parameters"]["query"]>;

const BASE = "/api/v1";

async function call<T>(token: string, path: string, init: RequestInit = {}): Promise<T> {
  const response = await fetch(path, {
    ...init,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
  });
  if (!response.ok) {
    const body = (await response.json()) as ApiError;
    throw new Error(`${body.error.code}: ${body.error.message} (${body.error.request_id})`);
  }
  return (await response.json()) as T;
}

export async function createItem(token: string, item: ItemCreate): Promise<Item> {
  const created = await call<Item>(token, `${BASE}/items`, {
    method: "POST",
    body: JSON.stringify(item),
  });
  return created;
}

export async function listItems(token: string, query: ListQuery): Promise<Item[]> {
  const params = new URLSearchParams();
  if (query.limit !== undefined) params.set("limit", String(query.limit));
  if (query.status !== undefined && query.status !== null) params.set("status", query.status);
  const page = await call<ItemPage>(token, `${BASE}/items?${params}`);
  return page.items;
}

export async function readItem(token: string, id: Item["id"]): Promise<Item> {
  type Path = paths["/api/v1/items/{item_id}"]["get"]["parameters"]["path"];
  const path: Path = { item_id: id };
  return call<Item>(token, `${BASE}/items/${path.item_id}`);
}

export async function example(token: string): Promise<string> {
  const created = await createItem(token, { title: "First", tags: ["demo"] });
  const listed = await listItems(token, { limit: 20, status: "draft" });
  const again = await readItem(token, created.id);
  return `${again.title} v${again.version} of ${listed.length} (${created.status})`;
}
