// Talking to TorchServe: the models it serves and what each offers (management API), and one image's
// maps (inference API).

/** A failed request, with the message to show (the server's own where it sent one). */
export class ServerError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.name = "ServerError";
    this.status = status;
  }
}

function headers(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function send(url, init) {
  try {
    return await fetch(url, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ServerError(
      `cannot reach ${url}: is TorchServe running (make serve), and does its config.properties allow this page's origin ` +
        `(${location.origin}) in cors_allowed_origin?`,
    );
  }
}

/** The server's message from an error response: ours is {"error": ...}, TorchServe's {"message": ...}. */
async function failure(response) {
  const text = await response.text();
  let message = text.slice(0, 500);
  try {
    const body = JSON.parse(text);
    message = body.error ?? body.message ?? message;
  } catch {
    // not JSON: show the text as it came
  }
  return new ServerError(`${response.status}: ${message}`, response.status);
}

/** Names of the models the management API lists. */
export async function listModels(management, token) {
  const response = await send(`${management.replace(/\/$/, "")}/models`, { headers: headers(token) });
  if (!response.ok) throw await failure(response);
  const body = await response.json();
  return (body.models ?? []).map((model) => model.modelName);
}

/** The model's description (TorchServe's describe API, ``?customized=true``): its facts, and the
 * methods it serves with their options and outputs (dino_attention/methods/). */
export async function describeModel(management, model, token) {
  const url = `${management.replace(/\/$/, "")}/models/${encodeURIComponent(model)}?customized=true`;
  const response = await send(url, { headers: headers(token) });
  if (!response.ok) throw await failure(response);
  const described = (await response.json())[0]?.customizedMetadata;
  const description = typeof described === "string" ? JSON.parse(described) : described;
  if (!description?.methods) throw new ServerError(`${model} does not describe its methods (an older server?)`);
  return description;
}

/** POST the image with ``fields`` as multipart to /predictions/<model>: {doc, text} of the JSON answer. */
export async function explain(server, model, image, fields, token, signal) {
  const form = new FormData();
  form.append("data", image, image.name ?? "image");
  for (const [name, value] of Object.entries(fields)) form.append(name, String(value));
  const url = `${server.replace(/\/$/, "")}/predictions/${encodeURIComponent(model)}`;
  const response = await send(url, { method: "POST", body: form, headers: headers(token), signal });
  if (!response.ok) throw await failure(response);
  const text = await response.text();
  return { doc: JSON.parse(text), text };
}
