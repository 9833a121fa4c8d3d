module github.com/tokenbus/tokenbus/libs/tokenclient

go 1.26.0
