module github.com/tokenbus/tokenbus/libs/simulator

go 1.26.0
