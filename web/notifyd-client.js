// placeholder: the JS client arrives with issue 4
