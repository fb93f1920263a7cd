//go:build !unix

package cli

import "errors"

func setOpenFilesLimit(func(uint64) uint64) (got, want uint64, err error) {
	return 0, 0, errors.New("not supported on this system")
}
