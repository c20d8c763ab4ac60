// AWS SDK for JavaScript v3: `sts get-caller-identity` with the default credential chain,
// which reaches the container provider (fromHttp) because FULL_URI is set and nothing else
// is configured. The STS endpoint comes from AWS_ENDPOINT_URL_STS, read by the SDK itself
// (the loopback guard fails the run if it was ignored). Prints the identity JSON on stdout.
//
//   AWS_ENDPOINT_URL_STS=http://127.0.0.1:PORT node sts-identity-v3.mjs
import guard from "./loopback-guard.js";
import { GetCallerIdentityCommand, STSClient } from "@aws-sdk/client-sts";

const stats = guard.install();
if (!/^http:\/\/(127\.0\.0\.1|localhost)(:\d+)?\/?$/.test(process.env.AWS_ENDPOINT_URL_STS ?? "")) {
  process.stderr.write("set AWS_ENDPOINT_URL_STS to a loopback http URL\n");
  process.exit(2);
}

const started = Date.now();
try {
  const data = await new STSClient({}).send(new GetCallerIdentityCommand({}));
  if (stats.refused.length) throw new Error("refused a non-loopback request");
  process.stdout.write(`${JSON.stringify({ UserId: data.UserId, Account: data.Account, Arn: data.Arn })}\n`);
} catch (error) {
  process.stderr.write(`${guard.describeError(error)}\n`);
  process.exitCode = 1;
} finally {
  process.stderr.write(`elapsed-ms: ${Date.now() - started}\n`);
}
