"""gunicorn settings for the orders service, read by ``gunicorn --config gunicorn.conf.py``.

The same file serves the container (Dockerfile CMD) and the local runner, which
only overrides the bind address and the access log on the command line.
Environment variables tune it without a new image.
"""

import os

# All interfaces inside the task: the load balancer reaches the container on
# its awsvpc address. (The agent, by contrast, listens on 127.0.0.1 only.)
# HOST narrows it, e.g. to 127.0.0.1 for local runs.
bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"

# Two or more processes, each with a few threads (gthread: keep-alive works and
# a slow request does not hold a whole process).
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))

# Import the app, and so create its engine, once in the master before forking:
# start-up errors (a missing DB_SECRET_ID, no agent token) stop the container at
# once instead of crash-looping workers, and the workers share the loaded code.
# rotating_pool drops the pool it inherited in each worker after the fork.
preload_app = True

timeout = 30
# ECS sends SIGTERM and waits stopTimeout (30 s in the task definition) before
# SIGKILL; in-flight requests get 20 s of that to finish.
graceful_timeout = 20
# Longer than an Application Load Balancer's 60 s idle timeout, as AWS advises:
# otherwise the server may close a connection the balancer is about to reuse (502s).
keepalive = 75

# Access and error logs to stdout/stderr, where the awslogs driver picks them up.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")

# gunicorn 25.1+ opens a control socket (for `gunicornc`) under $HOME/.gunicorn
# by default: the container's user has no home, and nothing here uses it.
control_socket_disable = True
