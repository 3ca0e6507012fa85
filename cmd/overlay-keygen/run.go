package main

import (
	"context"
	"fmt"
	"io"

	"cloudlet/lib/cliutil"
	"cloudlet/lib/sign"

	"github.com/urfave/cli/v2"
)

const description = `Makes an ed25519 key pair for signed overlays: the private key in FILE
(mode 0600, for overlay-pack --sign FILE) and the public key in FILE.pub
(for the cloudlet's overlay-apply --trusted-keys DIR: copy it into DIR).
Both are one line of text: "cloudlet-ed25519-private|public KEYID BASE64".
The key ID is the first 16 hex digits of sha256(public key); it is printed
on stdout and named in every signature error. Existing files are never
overwritten; each file appears atomically.

   overlay-keygen ~/.cloudlet/alice
   scp ~/.cloudlet/alice.pub cloudlet:/etc/cloudlet/trusted-keys/
   ... | overlay-pack --sign ~/.cloudlet/alice > app.overlay`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	app := cliutil.NewApp("overlay-keygen", "make an ed25519 key pair for signing overlays",
		"overlay-keygen FILE", description, nil,
		func(c *cli.Context) error {
			if c.NArg() != 1 {
				return cliutil.Usagef("want one argument, the private key file to create (the public key goes to FILE.pub)")
			}
			path := c.Args().First()
			k, err := sign.Generate(nil)
			if err != nil {
				return err
			}
			if err := sign.WriteKeyPair(path, k); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s %s.pub\n", k.ID, path)
			return nil
		}, stdin, stderr)
	return app.RunContext(ctx, args)
}
