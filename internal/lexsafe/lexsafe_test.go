package lexsafe

import "testing"

func TestSafe(t *testing.T) {
	tests := []struct {
		name, value string
		want        bool
	}{
		{"client_encoding", "UTF8", true},
		{"client_encoding", "utf-8", true},
		{"client_encoding", "LATIN1", true},
		{"client_encoding", "EUC_JP", true},
		{"client_encoding", "SJIS", false},
		{"CLIENT_ENCODING", "Shift_JIS", false},
		{"client_encoding", "big5", false},
		{"client_encoding", "GBK", false},
		{"client_encoding", "gb18030", false},
		{"client_encoding", "UHC", false},
		{"client_encoding", "johab", false},
		{"client_encoding", "WIN932", false},
		{"client_encoding", "Win-949", false},
		{"client_encoding", "windows932", false},
		{"standard_conforming_strings", "on", true},
		{"standard_conforming_strings", "off", false},
		{"standard_conforming_strings", "false", false},
		{"standard_conforming_strings", "0", false},
		{"backslash_quote", "on", false},
		{"search_path", "x", true},
	}
	for _, tt := range tests {
		if got := Safe(tt.name, tt.value); got != tt.want {
			t.Errorf("Safe(%q, %q) = %v, want %v", tt.name, tt.value, got, tt.want)
		}
	}
}
