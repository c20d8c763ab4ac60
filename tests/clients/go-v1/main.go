// Command go-v1 prints the caller identity as seen through AWS SDK for Go v1's default
// credential chain, so the test suite can run Go v1 against rolebroker as a real process.
// It is built offline in GOPATH mode against Debian's golang-github-aws-aws-sdk-go-dev.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/sts"
)

// Usage: go-v1 STS_ENDPOINT_URL (SDK v1 1.44 knows no AWS_ENDPOINT_URL_STS).
func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go-v1 STS_ENDPOINT_URL")
		os.Exit(2)
	}
	sess, err := session.NewSessionWithOptions(session.Options{
		Config:            aws.Config{Endpoint: aws.String(os.Args[1])},
		SharedConfigState: session.SharedConfigEnable,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "session:", err)
		os.Exit(2)
	}
	out, err := sts.New(sess).GetCallerIdentity(&sts.GetCallerIdentityInput{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	doc, _ := json.Marshal(map[string]string{"Arn": *out.Arn, "Account": *out.Account})
	fmt.Println(string(doc))
}
