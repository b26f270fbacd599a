//go:build integration

package managesieve

import (
	"testing"
	"time"
)

func TestZZProbe(t *testing.T) {
	c := startCyrus(t, nil)
	cl := login(t, c, labUser, Options{})
	cl.Close()
	time.Sleep(300 * time.Millisecond)
	t.Log("---- B: self login, close")
	cl2, _ := Dial(t.Context(), "tcp", c.SieveAddr, Options{})
	t.Log(cl2.AuthenticatePlain("", "alice", "secret"))
	cl2.Close()
	time.Sleep(300 * time.Millisecond)
	cl3 := login(t, c, labUser, Options{})
	t.Log(cl3.Logout())
	time.Sleep(300 * time.Millisecond)
	t.Fail()
}
