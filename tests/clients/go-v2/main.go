// Command go-v2 prints the caller identity as seen through AWS SDK for Go v2's default
// credential chain, so the test suite can run Go v2 against rolebroker as a real process.
// It is built offline in GOPATH mode against Debian's golang-github-aws-aws-sdk-go-v2-dev.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

// Usage: go-v2 STS_ENDPOINT_URL (SDK v2 1.17 knows no AWS_ENDPOINT_URL_STS).
func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go-v2 STS_ENDPOINT_URL")
		os.Exit(2)
	}
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "config:", err)
		os.Exit(2)
	}
	out, err := sts.NewFromConfig(cfg, func(o *sts.Options) {
		o.EndpointResolver = sts.EndpointResolverFromURL(os.Args[1])
	}).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	doc, _ := json.Marshal(map[string]string{"Arn": *out.Arn, "Account": *out.Account})
	fmt.Println(string(doc))
}
