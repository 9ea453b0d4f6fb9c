from django.db import models


class Customer(models.Model):
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=100)
    vip = models.BooleanField(default=False)
    joined = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.email
