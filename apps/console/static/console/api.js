// Calls to the REST API with the browser's session: same-origin cookies plus Django's CSRF token on writes.
// Every API error is {"error": {"code", "message", "fields"?}}; it is raised as an ApiError.

const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content ?? "";

export class ApiError extends Error {
  constructor(status, code, message, fields) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.fields = fields ?? null;
  }
}

/** An ApiError from a failed response (the error envelope when there is one). */
export async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's page, or an empty body
  }
  const error = body?.error;
  if (response.status === 401 || response.status === 403) {
    if (!error || error.code === "not_authenticated") {
      return new ApiError(response.status, "not_authenticated", "Your session has ended: reload the page to log in again.");
    }
  }
  if (error && typeof error.message === "string") {
    return new ApiError(response.status, error.code ?? "error", error.message, error.fields);
  }
  return new ApiError(response.status, "http_error", `The server answered ${response.status} ${response.statusText}.`);
}

/** fetch() with the session, CSRF and JSON defaults; returns the Response (not yet read). */
export function apiFetch(url, { method = "GET", json, headers = {}, signal } = {}) {
  const init = {
    method,
    credentials: "same-origin",
    headers: { Accept: "application/json", ...headers },
    signal,
  };
  if (method !== "GET" && method !== "HEAD") init.headers["X-CSRFToken"] = csrfToken;
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  return fetch(url, init);
}

/** GET/POST and parse JSON; throws ApiError on any non-2xx answer. */
export async function apiJSON(url, options = {}) {
  const response = await apiFetch(url, options);
  if (!response.ok) throw await errorFrom(response);
  return response.status === 204 ? null : response.json();
}
