//go:build !linux

package proxy

import (
	"net"
	"time"
)

// parker parks idle clients on Linux only (parker_linux.go); elsewhere an
// idle client keeps its goroutine.
type parker struct{}

func newParker(func(idleSince time.Time), func(*relay)) *parker { return nil }

func (p *parker) park(*relay) bool { return false }
func (p *parker) unpark(*relay)    {}
func (p *parker) close()           {}

func connFD(net.Conn) int32 { return -1 }
