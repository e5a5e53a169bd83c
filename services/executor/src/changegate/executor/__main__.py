import asyncio

from changegate.executor.app import main

asyncio.run(main())
