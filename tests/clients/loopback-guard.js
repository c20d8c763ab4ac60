// Shared by the identity scripts: watches every HTTP request the AWS SDK makes (through
// node's diagnostics channel, so the SDK itself is untouched), counts the requests to the
// container-credentials endpoint, and stops anything that would leave loopback: names other
// than localhost are not even resolved, and a request to any other address is destroyed
// before it connects. So a test never reaches real AWS, even if an SDK ignored the endpoint
// it was given; the script then fails and names the host.
"use strict";

const diagnostics = require("node:diagnostics_channel");
const dns = require("node:dns");

const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1", "[::1]"]);

function hostOf(request) {
  const header = request.getHeader && request.getHeader("host");
  const host = String(request.host || header || "");
  return host.replace(/:\d+$/, "");
}

function install() {
  const fullUri = process.env.AWS_CONTAINER_CREDENTIALS_FULL_URI;
  const credentialsPath = fullUri ? new URL(fullUri).pathname : null;
  const stats = { credentialRequests: 0, refused: [] };
  const resolve = dns.lookup;
  dns.lookup = function loopbackOnlyLookup(hostname, options, callback) {
    if (LOOPBACK.has(hostname)) return resolve.call(this, hostname, options, callback);
    stats.refused.push(hostname);
    const done = typeof options === "function" ? options : callback;
    const error = Object.assign(new Error(`loopback guard: refused to resolve ${hostname}`), {
      code: "ENOTFOUND",
    });
    process.nextTick(done, error);
    return undefined;
  };
  diagnostics.subscribe("http.client.request.start", ({ request }) => {
    const host = hostOf(request);
    if (!LOOPBACK.has(host)) {
      stats.refused.push(host);
      request.destroy(new Error(`loopback guard: refused a request to ${host}`));
      return;
    }
    if (credentialsPath && String(request.path).split("?")[0] === credentialsPath) {
      stats.credentialRequests += 1;
    }
  });
  process.on("exit", () => {
    // stderr, one "name: value" per line; tests read these, nothing secret in them.
    process.stderr.write(`credential-requests: ${stats.credentialRequests}\n`);
    if (stats.refused.length) process.stderr.write(`refused-hosts: ${stats.refused.join(",")}\n`);
  });
  return stats;
}

// Only what a test needs to see of an error: never the whole object (it may hold a request).
function describeError(error) {
  const parts = [`${error.name || "Error"}: ${error.message}`];
  for (const key of ["code", "Code", "statusCode", "$metadata"]) {
    if (error[key] !== undefined) parts.push(`${key}=${JSON.stringify(error[key])}`);
  }
  return parts.join(" ");
}

module.exports = { install, describeError };
