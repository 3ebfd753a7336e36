pytest_plugins = ["labfixtures"]
