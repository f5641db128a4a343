// Package placement will hold the placement group: the range map, the node
// registry and the revision oracle (see DESIGN.md). It is empty until the
// sharded-mode issue; single-group mode needs none of it.
package placement
