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
 * methods it serves with their options and outputs (vitscope/methods/). */
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

/** POST the image as a KServe v2 document whose outputs come back binary (the binary tensor extension)
 * to /predictions/<model>: {doc, arrays} where ``doc`` holds the metadata as the JSON answer does
 * and ``arrays`` maps each output's name to {shape, data} (a typed array). For outputs too large for
 * JSON, e.g. the features a page computes with. */
export async function explainBinary(server, model, image, fields, token, signal) {
  const body = JSON.stringify({
    inputs: [{ name: "image", datatype: "BYTES", shape: [1], data: [await base64Of(image)] }],
    parameters: { ...fields, binary_data_output: true },
  });
  const url = `${server.replace(/\/$/, "")}/predictions/${encodeURIComponent(model)}`;
  const init = { method: "POST", body, headers: { ...headers(token), "Content-Type": "application/json" }, signal };
  const response = await send(url, init);
  if (!response.ok) throw await failure(response);
  return decodeBinaryReply(new Uint8Array(await response.arrayBuffer()));
}

async function base64Of(blob) {
  const url = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
  return url.slice(url.indexOf(",") + 1);
}

/** A v2 reply with binary outputs: its JSON part (found by scanning, so no CORS-exposed header is
 * needed), then each output's bytes in order. The first output's parameters are the metadata (v2
 * parameters are scalars: the server writes lists as "a,b", read back here as arrays). */
export function decodeBinaryReply(bytes) {
  const length = jsonLength(bytes);
  const reply = JSON.parse(new TextDecoder().decode(bytes.subarray(0, length)));
  const arrays = {};
  let offset = length;
  for (const output of reply.outputs) {
    const size = output.parameters?.binary_data_size;
    const data = size === undefined ? output.data : tensorData(bytes.slice(offset, offset + size).buffer, output.datatype);
    if (size !== undefined) offset += size;
    arrays[output.name] = { shape: output.shape, data };
  }
  const doc = {};
  for (const [key, value] of Object.entries(reply.outputs[0]?.parameters ?? {})) {
    if (key !== "binary_data_size") doc[key] = typeof value === "string" && /^-?[\d.]+(,-?[\d.]+)+$/.test(value) ? value.split(",").map(Number) : value;
  }
  return { doc, arrays };
}

/** Bytes of the leading JSON object: up to the brace that closes the first one (strings skipped). */
function jsonLength(bytes) {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < bytes.length; i++) {
    const c = bytes[i];
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b) depth++;
    else if (c === 0x7d && --depth === 0) return i + 1;
  }
  throw new ServerError("the binary reply has no complete JSON part");
}

/** A binary v2 tensor's elements as a typed array (FP16 widened to Float32Array; BOOL as Uint8Array). */
function tensorData(buffer, datatype) {
  if (datatype === "FP32") return new Float32Array(buffer);
  if (datatype === "FP16") return float16ToFloat32(new Uint16Array(buffer));
  if (datatype === "BOOL" || datatype === "UINT8") return new Uint8Array(buffer);
  throw new ServerError(`the viewer cannot read ${datatype} tensors`);
}

/** IEEE half-precision bit patterns -> their float32 values. */
export function float16ToFloat32(halves) {
  const out = new Float32Array(halves.length);
  for (let i = 0; i < halves.length; i++) {
    const h = halves[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exponent = (h >> 10) & 0x1f;
    const fraction = h & 0x3ff;
    if (exponent === 0) out[i] = sign * fraction * 2 ** -24;
    else if (exponent === 31) out[i] = fraction ? NaN : sign * Infinity;
    else out[i] = sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
  }
  return out;
}
