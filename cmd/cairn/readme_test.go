package main

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestREADMEIgnoredFlags: the README's table of ignored flags names each
// flag of ignoredFlags once, with its reason, and no other flag; a flag
// that starts to take effect leaves both together.
func TestREADMEIgnoredFlags(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const header = "| flags | why they have no effect |"
	text := string(b)
	i := strings.Index(text, header)
	if i < 0 {
		t.Fatalf("README.md has no table starting %q", header)
	}
	documented := map[string]string{} // flag name -> reason
	flagName := regexp.MustCompile("`--([^`]+)`")
	for _, line := range strings.Split(text[i:], "\n")[2:] {
		if !strings.HasPrefix(line, "| ") {
			break
		}
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if len(cells) != 2 {
			t.Fatalf("README row %q: want two cells", line)
		}
		for _, m := range flagName.FindAllStringSubmatch(cells[0], -1) {
			if _, dup := documented[m[1]]; dup {
				t.Errorf("README lists --%s twice", m[1])
			}
			documented[m[1]] = cells[1]
		}
	}
	for _, g := range ignoredFlags {
		for _, name := range g.names {
			reason, ok := documented[name]
			switch {
			case !ok:
				t.Errorf("--%s is ignored (%s) but not in the README's table", name, g.reason)
			case reason != g.reason:
				t.Errorf("--%s: README gives %q, the code %q", name, reason, g.reason)
			}
			delete(documented, name)
		}
	}
	var left []string
	for name := range documented {
		left = append(left, name)
	}
	slices.Sort(left)
	for _, name := range left {
		t.Errorf("the README lists --%s as ignored, the code does not", name)
	}
}
