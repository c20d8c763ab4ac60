// AWS SDK for JavaScript v2, as Serverless v3 uses it: `sts get-caller-identity` with the
// default credential chain, which reaches the container provider (FULL_URI + token) because
// nothing else is configured. v2 cannot take an STS endpoint from the environment, so the
// endpoint is the one argument. Prints the identity JSON on stdout.
//
//   node sts-identity-v2.js http://127.0.0.1:PORT
"use strict";

const guard = require("./loopback-guard.js");

const stats = guard.install();
const endpoint = process.argv[2];
if (!endpoint || !/^http:\/\/(127\.0\.0\.1|localhost)(:\d+)?\/?$/.test(endpoint)) {
  process.stderr.write("usage: node sts-identity-v2.js http://127.0.0.1:PORT (loopback only)\n");
  process.exit(2);
}

const AWS = require("aws-sdk");

const started = Date.now();
new AWS.STS({ endpoint }).getCallerIdentity({}, (error, data) => {
  process.stderr.write(`elapsed-ms: ${Date.now() - started}\n`);
  if (error || stats.refused.length) {
    process.stderr.write(`${error ? guard.describeError(error) : "refused a non-loopback request"}\n`);
    process.exitCode = 1;
    return;
  }
  process.stdout.write(`${JSON.stringify({ UserId: data.UserId, Account: data.Account, Arn: data.Arn })}\n`);
});
