module github.com/cairn-kv/cairn

go 1.26.0

require (
	github.com/soheilhy/cmux v0.1.5 // indirect
	golang.org/x/net v0.0.0-20201202161906-c7110b5ffcbb // indirect
	golang.org/x/text v0.3.3 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)
