-- wrk script: every request is a short poll of /bench from the start (-1).
wrk.method = "POST"
wrk.body = "%2Fbench=-1&__seq=1"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
