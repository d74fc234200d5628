// kubefaas instance shim for Node.js scripts.
//
// Loads the script's entry file, reports readiness, then serves calls from
// the controller until the connection closes. Frames, both directions:
// 4-byte big-endian header length, 4-byte big-endian body length, header
// JSON, body bytes. The body is the raw payload, so any bytes travel unchanged.
'use strict';
const net = require('net');
const path = require('path');

function connect(onConnection) {
  if (process.env.KUBEFAAS_FD) {
    onConnection(new net.Socket({ fd: Number(process.env.KUBEFAAS_FD), readable: true, writable: true }));
    return;
  }
  const address = process.env.KUBEFAAS_LISTEN;
  const colon = address.lastIndexOf(':');
  const server = net.createServer((socket) => {
    server.close();
    onConnection(socket);
  });
  server.listen(Number(address.slice(colon + 1)), address.slice(0, colon) || '0.0.0.0');
}

function loadHandler() {
  const codeDir = process.env.KUBEFAAS_CODE_DIR;
  const exported = require(path.join(codeDir, process.env.KUBEFAAS_ENTRY));
  const handle = typeof exported === 'function' ? exported : exported && (exported.handle || exported.handler || exported.default);
  if (typeof handle !== 'function') {
    throw new Error(`${process.env.KUBEFAAS_ENTRY} exports no function: use module.exports = async function (data) { ... }`);
  }
  return handle;
}

function writeFrame(socket, header, body) {
  const encoded = Buffer.from(JSON.stringify(header));
  const prefix = Buffer.alloc(8);
  prefix.writeUInt32BE(encoded.length, 0);
  prefix.writeUInt32BE(body.length, 4);
  socket.write(Buffer.concat([prefix, encoded, body]));
}

function decodePayload(header, body) {
  if (!header.has_payload) return null;
  const text = body.toString('utf8');
  return Buffer.from(text, 'utf8').equals(body) ? text : body;
}

function encodePayload(payload) {
  if (payload === null || payload === undefined) return [false, Buffer.alloc(0)];
  if (Buffer.isBuffer(payload) || payload instanceof Uint8Array) return [true, Buffer.from(payload)];
  if (typeof payload === 'string') return [true, Buffer.from(payload, 'utf8')];
  return [true, Buffer.from(JSON.stringify(payload))];
}

async function serveCall(handle, header, body) {
  const data = {
    payload: decodePayload(header, body),
    variables: header.variables || {},
    meta: header.meta || {},
    flow: header.flow || {},
  };
  if (header.http !== undefined) data.http = header.http;
  try {
    let result = await handle(data);
    if (result === undefined || result === null) result = data;
    if (typeof result !== 'object' || Array.isArray(result)) {
      throw new TypeError(`the handler must return an object, not ${Array.isArray(result) ? 'an array' : typeof result}`);
    }
    const [hasPayload, payload] = encodePayload(result.payload);
    const reply = { id: header.id, ok: true, has_payload: hasPayload };
    for (const field of ['variables', 'meta', 'flow', 'response']) {
      if (result[field] !== undefined) reply[field] = result[field];
    }
    if (result.logs !== undefined) reply.logs = (result.logs || []).map(String);
    return [reply, payload];
  } catch (error) {
    console.error(error && error.stack ? error.stack : String(error));
    const type = error && error.constructor ? error.constructor.name : 'Error';
    const message = error && error.message !== undefined ? error.message : String(error);
    const traceback = error && error.stack ? String(error.stack) : undefined;
    return [{ id: header.id, ok: false, error: { type, message, traceback } }, Buffer.alloc(0)];
  }
}

// Bytes received and not yet framed, kept as a list of chunks. They are
// joined only once a whole frame has arrived, so a large frame that comes
// in many chunks is copied once, not once per chunk.
class Received {
  constructor(initial) {
    this.chunks = initial.length ? [initial] : [];
    this.length = initial.length;
  }

  push(chunk) {
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  // Returns the next whole frame as [header, body], or null until it has
  // arrived.
  nextFrame() {
    if (this.length < 8) return null;
    if (this.chunks[0].length < 8) this.chunks = [Buffer.concat(this.chunks)];
    const headerLength = this.chunks[0].readUInt32BE(0);
    const total = 8 + headerLength + this.chunks[0].readUInt32BE(4);
    if (this.length < total) return null;
    const joined = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const header = JSON.parse(joined.subarray(8, 8 + headerLength).toString('utf8'));
    const body = Buffer.from(joined.subarray(8 + headerLength, total));
    const rest = joined.subarray(total);
    this.chunks = rest.length ? [rest] : [];
    this.length = rest.length;
    return [header, body];
  }

  // Returns the bytes after the frames taken so far.
  rest() {
    return Buffer.concat(this.chunks);
  }
}

// Calls run concurrently: each reply is written when its handler settles,
// and the controller matches replies to calls by id.
function serve(socket, handle, initial) {
  const received = new Received(initial);
  const drain = () => {
    for (let frame = received.nextFrame(); frame; frame = received.nextFrame()) {
      const [header, body] = frame;
      serveCall(handle, header, body).then(([reply, payload]) => writeFrame(socket, reply, payload));
    }
  };
  socket.on('data', (chunk) => {
    received.push(chunk);
    drain();
  });
  drain();
  socket.on('end', () => process.exit(0));
  socket.on('error', () => process.exit(0));
}

// Reads exactly one frame, then hands the socket's remaining bytes back.
function readOneFrame(socket, onFrame) {
  const received = new Received(Buffer.alloc(0));
  const onData = (chunk) => {
    received.push(chunk);
    const frame = received.nextFrame();
    if (!frame) return;
    socket.removeListener('data', onData);
    socket.pause();
    onFrame(frame[0], frame[1], received.rest());
  };
  socket.on('data', onData);
  socket.on('end', () => process.exit(0));
}

// A prewarmed instance gets its script in one frame: `load` has the entry,
// the environment and the file list, the body the files' bytes in order.
function receiveScript(header, body) {
  const fs = require('fs');
  const codeDir = '/tmp/kubefaas-code';
  let offset = 0;
  for (const file of header.load.files) {
    const target = path.join(codeDir, file.path);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.writeFileSync(target, body.subarray(offset, offset + file.size));
    offset += file.size;
  }
  Object.assign(process.env, header.load.env);
  process.env.KUBEFAAS_CODE_DIR = codeDir;
  process.env.KUBEFAAS_ENTRY = header.load.entry;
  require('module').Module._initPaths();
  process.chdir(codeDir);
}

connect((socket) => {
  if (process.env.KUBEFAAS_PREWARM === '1') {
    writeFrame(socket, { ready: true, prewarmed: true, pid: process.pid }, Buffer.alloc(0));
    readOneFrame(socket, (header, body, rest) => {
      receiveScript(header, body);
      const handle = loadHandler();
      writeFrame(socket, { id: header.id, ok: true }, Buffer.alloc(0));
      serve(socket, handle, rest);
      socket.resume();
    });
    return;
  }
  const handle = loadHandler();
  writeFrame(socket, { ready: true, pid: process.pid }, Buffer.alloc(0));
  serve(socket, handle, Buffer.alloc(0));
});
