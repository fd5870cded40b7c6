// Resumable uploads to Sluice with the real tus JavaScript client (tus-js-client) under Node.
//
//   node tus_js_test.mjs --base http://127.0.0.1:PORT --secret SECRET --workdir DIR
//
// Run by tests/resumable/run.sh; tus-js-client comes from tests/resumable/node/node_modules.
// Each case prints `PASS name` or `FAIL name: reason`; the last line is
// `RESULT {"passed": N, "failed": M}`. Exit status 0 only if M is 0.
//
// Cases:
//   js-buffer-abort-resume  20 MiB Buffer, chunkSize 1 MiB, upload.abort() from onProgress once
//                           8 MiB are sent (the PATCH in flight is cut); a new tus.Upload with
//                           only `uploadUrl` (no endpoint, so it cannot silently start over)
//                           resumes: its first request is a HEAD, its first PATCH carries the
//                           HEAD's Upload-Offset > 0, it never POSTs; SHA-256 of the GET matches.
//   js-stream-creation-with-upload-resume
//                           20 MiB file read through fs.createReadStream, the first chunk sent in
//                           the creation POST (creation-with-upload), aborted after 5 MiB,
//                           resumed with a fresh read stream; SHA-256 matches.
//   js-terminate            abort(true) mid-upload sends DELETE (termination); afterwards the
//                           upload is gone (HEAD 404/410) and nothing was published.

import { createHash, createHmac, randomBytes, randomUUID } from 'node:crypto';
import { createReadStream, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const MiB = 1024 * 1024;
const CASE_TIMEOUT_MS = 120_000;
// tus-js-client is installed in ./node (package.json + package-lock.json there), which is not
// on this file's module search path: resolve it from there.
const require = createRequire(new URL('./node/package.json', import.meta.url));
const tus = require('tus-js-client');
const TUS_VERSION = require('tus-js-client/package.json').version;

const { values: args } = parseArgs({
  options: {
    base: { type: 'string' },
    secret: { type: 'string' },
    workdir: { type: 'string' },
    only: { type: 'string', multiple: true },
  },
});
if (!args.base || !args.secret || !args.workdir) {
  console.error('usage: node tus_js_test.mjs --base URL --secret SECRET --workdir DIR');
  process.exit(2);
}
const BASE = args.base.replace(/\/+$/, '');
const results = { passed: 0, failed: 0 };

class CaseFailed extends Error {}
function check(cond, msg) {
  if (!cond) throw new CaseFailed(msg);
}
function info(msg) {
  console.log(`INFO ${msg}`);
}

// protocols.md §1.2, `v`: HMAC-SHA256(secret, path + " " + size), lowercase hex.
function macV(path, size) {
  return createHmac('sha256', args.secret).update(`${path} ${size}`, 'utf8').digest('hex');
}
// encodeURIComponent per segment keeps the `/` between the uuid and the file name.
const encodePath = (path) => path.split('/').map(encodeURIComponent).join('/');
const endpointFor = (path, size) => `${BASE}/tus/${encodePath(path)}?v=${macV(path, size)}`;
const fileUrlFor = (path) => `${BASE}/upload/${encodePath(path)}`;
const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');

async function httpJson(method, url, headers = {}) {
  const res = await fetch(url, { method, headers, signal: AbortSignal.timeout(30_000) });
  const body = Buffer.from(await res.arrayBuffer());
  return { status: res.status, headers: res.headers, body };
}
function showRes(method, url, r) {
  const hdrs = [...r.headers].map(([k, v]) => `${k}: ${v}`).join('; ');
  return `${method} ${new URL(url).pathname} -> ${r.status} [${hdrs}] body=${JSON.stringify(r.body.subarray(0, 300).toString('latin1'))}`;
}

async function fetchAndCompare(path, expected) {
  const url = fileUrlFor(path);
  const res = await fetch(url, { signal: AbortSignal.timeout(120_000) });
  const body = Buffer.from(await res.arrayBuffer());
  check(res.status === 200, `GET published file: ${showRes('GET', url, { status: res.status, headers: res.headers, body })}`);
  check(body.length === expected.length, `GET published file: ${body.length} bytes, expected ${expected.length}`);
  const got = sha256(body);
  const want = sha256(expected);
  check(got === want, `GET published file: sha256 ${got}, expected ${want}`);
  info(`published ${new URL(url).pathname} (${body.length} bytes, sha256 ${got.slice(0, 16)}...)`);
}

// Hooks that record every request tus-js-client sends and what came back.
function recorder() {
  const log = [];
  return {
    log,
    onBeforeRequest(req) {
      log.push({ method: req.getMethod(), url: req.getURL(), offset: req.getHeader('Upload-Offset'), status: null });
    },
    onAfterResponse(req, res) {
      const entry = [...log].reverse().find((e) => e.method === req.getMethod() && e.status === null);
      if (entry) {
        entry.status = res.getStatus();
        entry.resOffset = res.getHeader('Upload-Offset');
      }
    },
    show() {
      return log.map((e) => `${e.method} ${new URL(e.url).pathname} off=${e.offset ?? '-'} -> ${e.status ?? 'aborted'} off=${e.resOffset ?? '-'}`).join(' | ');
    },
  };
}

function errText(err) {
  let s = String(err && err.message ? err.message : err);
  const res = err && err.originalResponse;
  if (res) s += ` [status ${res.getStatus()}, body ${JSON.stringify(String(res.getBody()).slice(0, 300))}]`;
  return s;
}

// Start an upload and abort it from onProgress once `abortAt` bytes were sent.
// Resolves with { url, acked } where `acked` is the last offset the server confirmed.
function uploadThenAbort(input, options, abortAt) {
  return new Promise((resolve, reject) => {
    let acked = 0;
    let aborted = false;
    const rec = recorder();
    const upload = new tus.Upload(input, {
      ...options,
      retryDelays: null, // no silent retries: every error surfaces
      onBeforeRequest: rec.onBeforeRequest,
      onAfterResponse: rec.onAfterResponse,
      onChunkComplete(_chunk, bytesAccepted) {
        acked = bytesAccepted;
      },
      onProgress(bytesSent) {
        if (aborted || bytesSent < abortAt) return;
        aborted = true;
        upload.abort().then(() => resolve({ url: upload.url, acked, sent: bytesSent, rec }), reject);
      },
      onSuccess() {
        reject(new CaseFailed(`upload finished before it could be aborted at ${abortAt}: ${rec.show()}`));
      },
      onError(err) {
        reject(new CaseFailed(`first upload failed: ${errText(err)}; requests: ${rec.show()}`));
      },
    });
    upload.start();
  });
}

// Resume with only uploadUrl; resolves with the request log once the upload succeeds.
function resume(input, options) {
  return new Promise((resolve, reject) => {
    const rec = recorder();
    const upload = new tus.Upload(input, {
      ...options,
      retryDelays: [0, 500, 1000], // the server may still hold the cut PATCH for a moment (409/423)
      onBeforeRequest: rec.onBeforeRequest,
      onAfterResponse: rec.onAfterResponse,
      onSuccess() {
        resolve({ rec, url: upload.url });
      },
      onError(err) {
        reject(new CaseFailed(`resumed upload failed: ${errText(err)}; requests: ${rec.show()}`));
      },
    });
    upload.start();
  });
}

function checkResumed(rec, uploadUrl, minOffset) {
  const { log } = rec;
  check(log.length > 0, 'the resumed upload sent no request');
  check(!log.some((e) => e.method === 'POST'), `the resumed upload created a new upload: ${rec.show()}`);
  check(log[0].method === 'HEAD' && log[0].url === uploadUrl, `the resumed upload did not start with HEAD ${uploadUrl}: ${rec.show()}`);
  const headOffset = Number(log[0].resOffset);
  const firstPatch = log.find((e) => e.method === 'PATCH');
  check(firstPatch, `the resumed upload sent no PATCH: ${rec.show()}`);
  const patchOffset = Number(firstPatch.offset);
  check(patchOffset > 0, `the first PATCH after resuming starts at ${firstPatch.offset}: ${rec.show()}`);
  check(patchOffset === headOffset, `first PATCH offset ${patchOffset} != HEAD's Upload-Offset ${headOffset}`);
  check(patchOffset >= minOffset, `resumed at ${patchOffset}, but the server had confirmed ${minOffset}`);
  return patchOffset;
}

async function headOffset(uploadUrl) {
  const r = await httpJson('HEAD', uploadUrl, { 'Tus-Resumable': '1.0.0' });
  check(r.status === 200 || r.status === 204, `HEAD upload: ${showRes('HEAD', uploadUrl, r)}`);
  const off = Number(r.headers.get('upload-offset'));
  check(Number.isInteger(off), `HEAD upload without a numeric Upload-Offset: ${showRes('HEAD', uploadUrl, r)}`);
  return off;
}

// ----------------------------------------------------------------------------- cases

async function caseBufferAbortResume() {
  const size = 20 * MiB;
  const name = 'big file.bin';
  const path = `${randomUUID()}/${name}`;
  const data = randomBytes(size);
  const common = { chunkSize: MiB, metadata: { filename: name, filetype: 'application/octet-stream' } };

  // Past 8 MiB, so the abort lands while a PATCH body is on the wire, not between two PATCHes.
  const first = await uploadThenAbort(data, { ...common, endpoint: endpointFor(path, size) }, 8 * MiB + 1);
  // Location is path-absolute; Sluice may put it under url_prefix (it accepts both forms).
  check(first.url && (first.url.startsWith(`${BASE}/tus/`) || first.url.startsWith(`${BASE}/upload/tus/`)),
    `upload URL ${first.url} is not under ${BASE}/tus/ (or ${BASE}/upload/tus/)`);
  const serverOffset = await headOffset(first.url);
  const cut = first.rec.log[first.rec.log.length - 1];
  info(`aborted after ${first.sent} bytes sent (${first.acked} confirmed, ${cut.status === null ? `${cut.method} at ${cut.offset} cut in flight` : 'between requests'}); HEAD says ${serverOffset}`);
  check(serverOffset >= first.acked && serverOffset < size,
    `HEAD after abort says ${serverOffset}, expected between ${first.acked} (confirmed) and ${size}`);
  const pre = await httpJson('GET', fileUrlFor(path));
  check(pre.status === 404, `half-done upload already visible: ${showRes('GET', fileUrlFor(path), pre)}`);

  const second = await resume(data, { ...common, uploadUrl: first.url });
  check(second.url === first.url, `resumed upload ended on another URL ${second.url}`);
  const at = checkResumed(second.rec, first.url, first.acked);
  info(`resumed at offset ${at}: ${second.rec.log.filter((e) => e.method === 'PATCH').length} PATCHes; first requests: ${second.rec.show().split(' | ').slice(0, 3).join(' | ')}`);
  await fetchAndCompare(path, data);
}

async function caseStreamCreationWithUploadResume() {
  const size = 20 * MiB;
  const name = 'stream résumé.bin';
  const path = `${randomUUID()}/${name}`;
  const data = randomBytes(size);
  const local = join(args.workdir, 'js-stream.bin');
  writeFileSync(local, data);
  const common = { chunkSize: MiB, metadata: { filename: name } };

  const first = await uploadThenAbort(createReadStream(local),
    { ...common, endpoint: endpointFor(path, size), uploadDataDuringCreation: true }, 5 * MiB);
  const post = first.rec.log.find((e) => e.method === 'POST');
  check(post && post.status === 201, `creation POST: ${first.rec.show()}`);
  check(post.resOffset === String(MiB), `creation-with-upload: POST answered Upload-Offset ${post.resOffset}, expected ${MiB}: ${first.rec.show()}`);
  const serverOffset = await headOffset(first.url);
  info(`aborted after ${first.sent} bytes sent (${first.acked} confirmed); HEAD says ${serverOffset}`);

  const second = await resume(createReadStream(local), { ...common, uploadUrl: first.url });
  const at = checkResumed(second.rec, first.url, first.acked);
  info(`resumed at offset ${at}: ${second.rec.log.filter((e) => e.method === 'PATCH').length} PATCHes; first requests: ${second.rec.show().split(' | ').slice(0, 3).join(' | ')}`);
  await fetchAndCompare(path, readFileSync(local));
}

async function caseTerminate() {
  const size = 6 * MiB;
  const path = `${randomUUID()}/terminated.bin`;
  const data = randomBytes(size);
  const rec = recorder();
  const url = await new Promise((resolve, reject) => {
    let aborting = false;
    const upload = new tus.Upload(data, {
      endpoint: endpointFor(path, size),
      chunkSize: MiB,
      retryDelays: null,
      onBeforeRequest: rec.onBeforeRequest,
      onAfterResponse: rec.onAfterResponse,
      onChunkComplete(_c, accepted) {
        if (aborting || accepted < 2 * MiB) return;
        aborting = true;
        upload.abort(true).then(() => resolve(upload.url),
          (err) => reject(new CaseFailed(`abort(true) failed: ${errText(err)}; requests: ${rec.show()}`)));
      },
      onSuccess() {
        reject(new CaseFailed(`upload finished before it could be terminated: ${rec.show()}`));
      },
      onError(err) {
        reject(new CaseFailed(`upload failed: ${errText(err)}; requests: ${rec.show()}`));
      },
    });
    upload.start();
  });
  const del = rec.log.find((e) => e.method === 'DELETE');
  check(del && del.status === 204, `termination: DELETE ${del ? `answered ${del.status}` : 'not sent'}: ${rec.show()}`);
  const r = await httpJson('HEAD', url, { 'Tus-Resumable': '1.0.0' });
  check(r.status === 404 || r.status === 410, `HEAD after DELETE: ${showRes('HEAD', url, r)}`);
  const g = await httpJson('GET', fileUrlFor(path));
  check(g.status === 404, `terminated upload published: ${showRes('GET', fileUrlFor(path), g)}`);
}

// ----------------------------------------------------------------------------- runner

async function runCase(name, fn) {
  if (args.only && !args.only.includes(name)) return;
  const t0 = Date.now();
  let timer;
  try {
    await Promise.race([
      fn(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new CaseFailed(`timed out after ${CASE_TIMEOUT_MS / 1000} s`)), CASE_TIMEOUT_MS);
      }),
    ]);
    results.passed += 1;
    console.log(`PASS ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (err) {
    results.failed += 1;
    console.log(`FAIL ${name}: ${err instanceof CaseFailed ? err.message : errText(err)}`);
    if (!(err instanceof CaseFailed) && err && err.stack) {
      for (const line of err.stack.split('\n')) console.log(`     ${line}`);
    }
  } finally {
    clearTimeout(timer);
  }
}

info(`tus-js-client ${TUS_VERSION}, node ${process.version}`);
await runCase('js-buffer-abort-resume', caseBufferAbortResume);
await runCase('js-stream-creation-with-upload-resume', caseStreamCreationWithUploadResume);
await runCase('js-terminate', caseTerminate);
console.log(`RESULT ${JSON.stringify(results)}`);
process.exit(results.failed ? 1 : 0);
