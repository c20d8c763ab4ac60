// AWS SDK for JavaScript v3 inside a "container": the default provider chain resolves the
// container provider (FULL_URI + AWS_CONTAINER_AUTHORIZATION_TOKEN, or RELATIVE_URI) and
// prints only the AccessKeyId it got (never a secret), or the error on stderr.
import { defaultProvider } from "@aws-sdk/credential-provider-node";

try {
  const credentials = await defaultProvider()();
  process.stdout.write(`${JSON.stringify({ AccessKeyId: credentials.accessKeyId })}\n`);
} catch (error) {
  process.stderr.write(`${error?.name}: ${error?.message}\n`);
  process.exitCode = 1;
}
