import asyncio

from changegate.detector.app import main

asyncio.run(main())
